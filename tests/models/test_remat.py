"""Rematerialisation (model.remat) changes what the backward pass keeps, not the
network: the same parameter names and the same gradients for every policy."""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion_jax.models import unet
from diffusion_jax.models.unet import Cond, UNet, UNetConfig
from diffusion_jax.training import state as state_lib

# A one-level version of the tiny test U-Net (quick to compile), with attention and
# class labels, so that residual and attention blocks are both rematerialised.
TINY = dict(out_channels=1, ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,),
            num_groups=4, dropout=0.0, num_classes=10)


def grads_of(remat: str):
  model = UNet(UNetConfig(**TINY, remat=remat))
  x0, t, cond = state_lib.dummy_inputs(model, 4, 8, 1)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x0.shape), jnp.float32)
  t = jnp.asarray(rng.uniform(0.1, 0.9, t.shape), jnp.float32)
  cond = Cond(labels=jnp.arange(4, dtype=jnp.int32))
  params = model.init(jax.random.key(0), x, t, cond)["params"]
  # Non-zero output layers: with their zero init, most gradients would be zero.
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape),
                        params)

  def loss(p):
    return jnp.mean((model.apply({"params": p}, x, t, cond, train=True) - x) ** 2)
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
  return jax.jit(jax.grad(loss))(params), jaxpr


def test_every_remat_policy_gives_the_same_gradients_and_parameter_names():
  base, base_jaxpr = grads_of("none")
  assert "remat" not in base_jaxpr and "checkpoint" not in base_jaxpr
  for policy in unet.REMAT_POLICIES:
    if policy == "none":
      continue
    grads, jaxpr = grads_of(policy)
    # The blocks really are rematerialised (the program holds jax.checkpoint)...
    assert "remat" in jaxpr or "checkpoint" in jaxpr, policy
    # ... under the same parameter names (a checkpoint restores with any policy) ...
    assert jax.tree.structure(grads) == jax.tree.structure(base), policy
    # ... with the same gradients, up to the order XLA sums them in.
    for (path, g), b in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(base)):
      np.testing.assert_allclose(g, b, rtol=1e-5, atol=1e-7, err_msg=f"{policy} {path}")
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) > 1e-3
