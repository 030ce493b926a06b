"""One 3x3 convolution on XLA:CPU: forward, input gradient and ways to compute the kernel
gradient, in GFLOP/s, beside PyTorch's on the same CPU, interleaved.

  python experiments/bench_conv.py --peer-python=.venv/bin/python \
      --shapes=8x32x128x128,32x32x128x128,32x16x256x256 --rounds=3

A shape is BATCHxSIZExC_INxC_OUT (NHWC, square, SAME padding). Kernel-gradient
formulations (--impls): `xla` (autodiff of lax.conv_general_dilated: one convolution
whose window is the whole feature map, contracting batch x pixels), `lib_<name>`
(models.conv.CONV_IMPLS[name] as the U-Net uses it), `chunkN` (XLA's kernel gradient on
N examples at a time, summed), `scanN` (the same in a lax.scan), `groupedN` (the chunks
as one grouped convolution), `matmul9` (9 products of shifted input views with the
output gradient), `im2col` (one product of the patch matrix with the output gradient)
and `nchw` (the gradient convolution written out with the batch as its feature dim, in
NCHW). Each round times a 2048^2 matmul (the yardstick), then per shape the JAX side
and the PyTorch side (aten's convolution_backward in a worker process that stays up),
alternating the order. A time is the best of --reps calls; printed: one JSON line per
round and shape, then the medians. A benchmark, never a test.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax.models import conv as conv_lib  # noqa: E402
from experiments import machine  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")

PEER_WORKER = r"""
import json, sys, time
import torch
import torch.nn.functional as F

def best(fn, reps):
  fn()
  t = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter(); fn(); t = min(t, time.perf_counter() - t0)
  return t

torch.manual_seed(0)
for line in sys.stdin:
  req = json.loads(line)
  reps = req["reps"]
  with torch.no_grad():
    if req["op"] == "matmul":
      a = torch.randn(req["n"], req["n"])
      out = {"matmul_s": best(lambda: a @ a, reps)}
    else:
      b, s, cin, cout, st = (req[f] for f in ("batch", "size", "cin", "cout", "stride"))
      x, w = torch.randn(b, cin, s, s), torch.randn(cout, cin, 3, 3) * 0.05
      dy = torch.randn_like(F.conv2d(x, w, stride=st, padding=1))
      grad = lambda mask: lambda: torch.ops.aten.convolution_backward(
          dy, x, w, None, [st, st], [1, 1], [1, 1], False, [0, 0], 1, mask)
      out = {"fwd_s": best(lambda: F.conv2d(x, w, stride=st, padding=1), reps),
             "dx_s": best(grad([True, False, False]), reps),
             "dw_s": best(grad([False, True, False]), reps)}
  print(json.dumps(out), flush=True)
"""


def _conv(x, k, s):
  return lax.conv_general_dilated(x, k, (s, s), "SAME", dimension_numbers=DN)


def _pads(x, s):
  return lax.padtype_to_pads(x.shape[1:3], (3, 3), (s, s), "SAME")


def dw_xla(x, dy, s):
  k = jnp.zeros((3, 3, x.shape[-1], dy.shape[-1]), x.dtype)
  return jax.vjp(lambda k: _conv(x, k, s), k)[1](dy)[0]


def dw_lib(name):
  def f(x, dy, s):
    k = jnp.zeros((3, 3, x.shape[-1], dy.shape[-1]), x.dtype)
    conv = lambda k: conv_lib.CONV_IMPLS[name](x, k, (s, s), "SAME", dimension_numbers=DN)
    return jax.vjp(conv, k)[1](dy)[0]
  return f


def dw_chunk(n):
  def f(x, dy, s):
    parts = [dw_xla(x[i:i + n], dy[i:i + n], s) for i in range(0, x.shape[0], n)]
    return sum(parts[1:], parts[0])
  return f


def dw_scan(n):
  def f(x, dy, s):
    b = x.shape[0]
    xs, dys = x.reshape((b // n, n) + x.shape[1:]), dy.reshape((b // n, n) + dy.shape[1:])
    k0 = jnp.zeros((3, 3, x.shape[-1], dy.shape[-1]), x.dtype)
    return lax.scan(lambda acc, a: (acc + dw_xla(a[0], a[1], s), None), k0, (xs, dys))[0]
  return f


def dw_grouped(n):
  def f(x, dy, s):
    b, _, _, c = x.shape
    _, oh, ow, o = dy.shape
    g = b // n
    rhs = dy.reshape(g, n, oh, ow, o).transpose(2, 3, 1, 0, 4).reshape(oh, ow, n, g * o)
    out = lax.conv_general_dilated(x, rhs, (1, 1), _pads(x, s), rhs_dilation=(s, s),
                                   dimension_numbers=("CHWN", "HWIO", "NHWC"),
                                   feature_group_count=g)
    return out.reshape(c, 3, 3, g, o).sum(3).transpose(1, 2, 0, 3)
  return f


def _shifted(x, dy, s):
  (lo_h, hi_h), (lo_w, hi_w) = _pads(x, s)
  xp = jnp.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
  oh, ow = dy.shape[1:3]
  return [lax.slice(xp, (0, i, j, 0), (xp.shape[0], i + (oh - 1) * s + 1,
                                       j + (ow - 1) * s + 1, xp.shape[3]), (1, s, s, 1))
          for i in range(3) for j in range(3)]


def dw_matmul9(x, dy, s):
  out = [lax.dot_general(w, dy, (((0, 1, 2), (0, 1, 2)), ((), ()))) for w in _shifted(x, dy, s)]
  return jnp.stack(out).reshape(3, 3, x.shape[-1], dy.shape[-1])


def dw_im2col(x, dy, s):
  p = jnp.concatenate(_shifted(x, dy, s), axis=-1)
  n = p.shape[0] * p.shape[1] * p.shape[2]
  return (p.reshape(n, -1).T @ dy.reshape(n, -1)).reshape(3, 3, x.shape[-1], dy.shape[-1])


def dw_nchw(x, dy, s):
  # The kernel gradient as a convolution: C_in plays the batch, the batch the feature.
  lhs, rhs = x.transpose(3, 0, 1, 2), dy.transpose(0, 3, 1, 2)  # (C, B, H, W), (B, O, H, W)
  out = lax.conv_general_dilated(lhs, rhs, (1, 1), _pads(x, s), rhs_dilation=(s, s),
                                 dimension_numbers=("NCHW", "IOHW", "NCHW"))
  return out.transpose(2, 3, 0, 1)  # (C, O, kh, kw) -> (kh, kw, C, O)


def formulation(name: str):
  fixed = {"xla": dw_xla, "matmul9": dw_matmul9, "im2col": dw_im2col, "nchw": dw_nchw}
  if name in fixed:
    return fixed[name]
  for prefix, make in (("lib_", dw_lib), ("chunk", dw_chunk), ("scan", dw_scan),
                       ("grouped", dw_grouped)):
    if name.startswith(prefix):
      arg = name[len(prefix):]
      return make(arg if prefix == "lib_" else int(arg))
  raise SystemExit(f"error: unknown formulation {name!r}")


def best(fn, args, reps: int) -> float:
  jax.block_until_ready(fn(*args))
  t = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    t = min(t, time.perf_counter() - t0)
  return t


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--shapes", default="8x32x128x128,32x32x128x128")
  p.add_argument("--stride", type=int, default=1)
  p.add_argument("--impls", default="xla,lib_chunked,chunk2,chunk4,chunk8,matmul9,im2col,nchw")
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--reps", type=int, default=2)
  p.add_argument("--peer-python", default="", help="A Python with torch.")
  p.add_argument("--out", default="", help="Also append the summary line to this file.")
  args = p.parse_args()
  s = args.stride
  where = {"cpu": machine.cpu_model(), "jax": jax.__version__, "stride": s,
           "chunk_positions": conv_lib.CHUNK_POSITIONS}
  print(json.dumps(where), flush=True)
  peer = None
  if args.peer_python:
    peer = subprocess.Popen([args.peer_python, "-c", PEER_WORKER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)

  def ask(req):
    peer.stdin.write(json.dumps(req) + "\n")
    peer.stdin.flush()
    return json.loads(peer.stdout.readline())

  rng = np.random.default_rng(0)
  setups = {}
  for shape in args.shapes.split(","):
    b, hw, ci, co = (int(v) for v in shape.split("x"))
    oh = (hw + s - 1) // s
    x = jnp.asarray(rng.standard_normal((b, hw, hw, ci)), jnp.float32)
    dy = jnp.asarray(rng.standard_normal((b, oh, oh, co)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, ci, co)) * 0.05, jnp.float32)
    ref = jax.jit(dw_xla, static_argnums=2)(x, dy, s)
    fns = {"fwd": (jax.jit(lambda x, k: _conv(x, k, s)), (x, k)),
           "dx": (jax.jit(lambda k, dy, x=x: jax.vjp(lambda v: _conv(v, k, s), x)[1](dy)[0]),
                  (k, dy))}
    for name in args.impls.split(","):
      f = jax.jit(formulation(name), static_argnums=2)
      err = float(jnp.max(jnp.abs(f(x, dy, s) - ref)) / jnp.max(jnp.abs(ref)))
      if err > 1e-4:
        print(json.dumps({"mismatch": name, "shape": shape, "rel_err": err}), flush=True)
      fns["dw_" + name] = ((lambda f: lambda x, dy: f(x, dy, s))(f), (x, dy))
    setups[shape] = (2 * b * oh * oh * ci * co * 9, fns, (b, hw, ci, co))
  a = jnp.asarray(rng.standard_normal((2048, 2048)), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  rows = {"matmul": []}
  for r in range(args.rounds):
    mm = {"jax_matmul": 2 * 2048 ** 3 / best(matmul, (a,), args.reps) / 1e9}
    if peer:
      mm["torch_matmul"] = 2 * 2048 ** 3 / ask({"op": "matmul", "n": 2048,
                                                "reps": args.reps})["matmul_s"] / 1e9
    rows["matmul"].append(mm)
    for shape, (flops, fns, (b, hw, ci, co)) in setups.items():
      row = {}
      sides = ["jax", "torch"] if r % 2 == 0 else ["torch", "jax"]
      for side in sides:
        if side == "jax":
          names = list(fns) if r % 2 == 0 else list(fns)[::-1]
          for name in names:
            row["jax_" + name] = flops / best(fns[name][0], fns[name][1], args.reps) / 1e9
        elif peer:
          t = ask({"op": "conv", "batch": b, "size": hw, "cin": ci, "cout": co, "stride": s,
                   "reps": args.reps})
          row.update({"torch_" + k[:-2]: flops / t[k] / 1e9 for k in ("fwd_s", "dx_s", "dw_s")})
      rows.setdefault(shape, []).append(row)
      print(json.dumps({"round": r, "shape": shape, "load": os.getloadavg()[0],
                        **{k: round(v, 1) for k, v in {**mm, **row}.items()}}), flush=True)
  if peer:
    peer.stdin.close()
    peer.wait()
  med = lambda rs, k: round(statistics.median(x[k] for x in rs), 1)
  summary = {"gflops_matmul": {k: med(rows["matmul"], k) for k in rows["matmul"][0]}}
  for shape, rs in rows.items():
    if shape == "matmul":
      continue
    entry = {k: med(rs, k) for k in rs[0]}
    # Within-round ratios to XLA's kernel gradient (and to PyTorch's), then medians.
    for k in rs[0]:
      if k.startswith("jax_dw_") and k != "jax_dw_xla":
        entry["speedup_" + k[7:]] = round(statistics.median(x[k] / x["jax_dw_xla"] for x in rs), 2)
      if peer and k.startswith("jax_dw_"):
        entry["vs_torch_" + k[7:]] = round(statistics.median(x[k] / x["torch_dw"] for x in rs), 2)
    summary[shape] = entry
  machine.emit({"summary": summary, **where}, args.out)


if __name__ == "__main__":
  main()
