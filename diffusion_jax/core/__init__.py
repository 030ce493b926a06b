"""The diffusion core: pure functions of arrays, with no I/O and no network state.

  schedules         forward processes alpha(t), sigma(t), log-SNR(t)
  parameterisation  forward noising, network targets and their conversion to x0
  diffusion         the process of a run, weightings, training times, the loss, the denoiser
  samplers          every sampler over any denoiser, time grids
  guidance          classifier-free guidance with one scale per condition
  likelihood        discrete variational bound, probability-flow ODE likelihood
"""
