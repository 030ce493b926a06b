"""Every field of a diffusion_jax run, with its meaning. Experiment configs start here.

The defaults are the CPU digits demo (configs/digits.py gives its command and result).
Fields that name an option take a name of the registry that defines it; docs/ lists
each registry's names and what they mean.
"""

import ml_collections


# Fields of earlier versions, with why they went: a saved config that holds them still
# loads (config/files.py), and they are ignored.
RETIRED = {
    "data.shuffle_buffer": "the pipeline shuffles the whole split (data/order.py)",
}


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # Base PRNG seed: parameter init, per-step noise, data order.
  # What the run trains: run.build.KINDS ("diffusion"; "autoencoder": the KL autoencoder
  # of the `autoencoder` and `autoencoder_loss` sections, for latent diffusion).
  c.kind = "diffusion"

  # --- Data: any tfds dataset, or one bundled with the package.
  c.data = d = ml_collections.ConfigDict()
  d.name = "sklearn_digits"  # tfds name ("cifar10", ...), one of data.pipeline.BUNDLED, or "image_folder".
  d.data_dir = ""  # tfds data_dir ("" = $TFDS_DATA_DIR or ~/tensorflow_datasets); image_folder: the folder.
  d.split = "train"  # Split expression ("train", "train[:90%]"); each process reads its share.
  d.image_key = "image"  # Feature holding the image.
  d.label_key = "label"  # Feature holding the class label (used if num_classes > 0).
  d.text_key = "caption"  # Feature holding captions (used if model.text_vocab_size > 0).
  d.text_emb_key = "text_emb"  # Feature of precomputed (L, D) embeddings (model.text_emb_dim > 0).
  d.image_size = 8  # Images are resized (area) to image_size x image_size if needed.
  d.channels = 1  # Image channels (1 grayscale, 3 RGB).
  d.num_classes = 10  # Classes for conditioning; 0 = unconditional.
  d.random_flip = False  # Random horizontal flips (not for digits: they change meaning).
  d.cache = True  # Keep each decoded record in memory once read (splits that fit in memory).
  d.read_threads = 2  # Threads per process reading and preprocessing batches (0: none).
  d.prefetch_batches = 2  # Batches each process reads ahead (at most read_threads at once).

  # --- Model: the U-Net (diffusion_jax.models.UNetConfig).
  c.model = m = ml_collections.ConfigDict()
  m.ch = 32  # Base channel count.
  m.ch_mult = (1, 2)  # Channel multiplier per resolution level; len = number of levels.
  m.num_res_blocks = 2  # Residual blocks per level (the up path has one more).
  m.attn_resolutions = (4,)  # Feature-map sizes (pixels) that get self-attention.
  m.num_heads = 1  # Attention heads.
  m.dropout = 0.1  # Dropout in residual blocks.
  m.num_groups = 8  # GroupNorm groups; must divide every channel count.
  m.scale_shift_norm = False  # ADM-style time-embedding scale/shift of the norm.
  m.num_classes = d.get_ref("num_classes")  # Label embedding size (+1 null label).
  m.out_channels = d.get_ref("channels")  # Output channels = image channels.
  m.cond_image_channels = 0  # Channels of the conditioning image (see cond.image); 0 = none.
  m.cond_image_resolutions = ()  # Lower feature-map sizes that also get the cond. image.
  m.text_vocab_size = 0  # Text as token ids: embedding rows (>= words + 1); 0 = no tokens.
  m.text_max_len = 16  # Most tokens in a prompt.
  m.text_width = 64  # Text encoder and cross-attention context width.
  m.text_layers = 2  # Transformer layers of the jointly trained text encoder.
  m.text_heads = 4  # Its attention heads.
  m.text_emb_dim = 0  # Text as precomputed embeddings of this width; 0 = none.
  m.cross_attn_resolutions = ()  # Feature-map sizes with cross-attention to the text.
  m.cross_attn_positions = False  # Learned query positions in that cross-attention.
  m.text_pooled = True  # The text's mean also added to the time embedding.
  m.dtype = "float32"  # Compute dtype of the layers (models.unet.DTYPES; bfloat16 on TPU).
  m.param_dtype = "float32"  # Dtype of parameters, EMA, optimizer state (unet.PARAM_DTYPES).
  m.remat = "none"  # Blocks recomputed in the backward pass: models.unet.REMAT_POLICIES.
  m.conv_impl = "auto"  # How convolutions make their kernel gradient: models.conv.CONV_IMPLS.
  # Architecture options of score_sde (DDPM++/NCSN++), EDM and VDM; the defaults are DDPM's.
  m.embedding = "positional"  # Time embedding (models.unet.EMBEDDINGS).
  m.fourier_scale = 16.0  # fourier: std of the random frequencies (applied to t in [0, 1]).
  m.resblock_updown = False  # BigGAN-style residual blocks do the down/upsampling.
  m.resample_filter = (1, 1)  # FIR taps of those blocks and progressive paths; (1, 3, 3, 1) = FIR.
  m.skip_rescale = False  # Scale residual and attention sums by 1/sqrt(2).
  m.up_attn_once = False  # Up path: one attention per level (score_sde, EDM), not per block.
  m.progressive_input = "none"  # Input pyramid (NCSN++): "none" or models.unet.PROGRESSIVE_INPUTS.
  m.progressive = "none"  # Output pyramid (NCSN++): "none" or models.unet.PROGRESSIVES.
  m.input_fourier = ()  # VDM: exponents k of sin/cos(2^k 2 pi x) input features; () = none.
  m.augment_dim = 0  # Augmentation labels the network takes (= augment's label size); 0 = none.

  # --- Non-leaking augmentation (EDM; training.augment.AugmentConfig, docs/configs.md):
  # geometric transforms of the training images, their parameters given to the network
  # as labels (zero at sampling). Needs model.augment_dim = the labels' size (EDM's: 9).
  c.augment = au = ml_collections.ConfigDict()
  au.p = 0.0  # Probability that each op is on, per example (EDM: 0.12); 0 = off.
  # Names of training.augment.AUGMENTATIONS; these are EDM's (9 labels).
  au.ops = ("xflip", "yflip", "scale", "rotate", "aniso", "translate")
  au.always = ()  # Ops of `ops` on for every example (EDM: ("xflip",)).

  # --- Latent diffusion (docs/latent.md).
  c.latent = la = ml_collections.ConfigDict()
  # Diffusion runs: the autoencoder whose latent space the U-Net works in: the workdir
  # of an autoencoder run, or a converted weight file (models/convert_vae.py); "" = pixels.
  la.autoencoder = ""
  # Diffusion runs: a latent cache of data.split under that autoencoder (built by
  # python -m diffusion_jax.run.latent_cache), read instead of encoding each batch; "" = encode.
  la.cache = ""
  # Diffusion runs that encode: the train step encodes each device's images in this many
  # chunks, one after another (fewer activations at once; the same latents). It must
  # divide the per-device batch.
  la.encode_chunks = 1
  # Autoencoder runs: batches of the training split whose posterior samples give the
  # latent scale (1 / their std), computed at the end of training.
  la.scale_batches = 8

  # --- The autoencoder (kind "autoencoder"): models.autoencoder.AutoencoderConfig; its
  # in/out channels are data.channels, its scaling_factor is computed (latent.scale_batches).
  c.autoencoder = a = ml_collections.ConfigDict()
  a.block_out_channels = (32, 64, 64)  # One level per entry; downsampling f = 2^(len - 1).
  a.layers_per_block = 1  # ResNet blocks per encoder level (the decoder has one more).
  a.latent_channels = 4  # Channels of the latent (and of the latent U-Net's input).
  a.norm_num_groups = 8  # GroupNorm groups; must divide every entry of block_out_channels.
  a.mid_block_add_attention = True  # Self-attention in the lowest-resolution block.
  a.dtype = "float32"  # Compute dtype (models.autoencoder.DTYPES); parameters are float32.

  # --- The autoencoder's loss: models.autoencoder_losses.AutoencoderLossConfig.
  c.autoencoder_loss = al = ml_collections.ConfigDict()
  al.reconstruction = "l1"  # Pixel error: models.autoencoder_losses.RECONSTRUCTIONS.
  al.kl_weight = 1e-6  # Weight of KL(q(z|x) || N(0, I)).
  al.perceptual_weight = 0.0  # LPIPS weight; > 0 needs lpips_weights.
  al.lpips_weights = ""  # LPIPS's VGG16 weights (models.autoencoder_losses.load_lpips).
  al.disc_weight = 0.5  # Adversarial term's weight (adaptive, as LDM); 0 = no discriminator.
  al.disc_factor = 1.0  # Factor of the adversarial terms once switched on.
  al.disc_start = 50001  # Step from which the adversarial terms count (warm-up before).
  al.disc_loss = "hinge"  # Discriminator loss: models.autoencoder_losses.DISC_LOSSES.
  al.disc_channels = 64  # PatchGAN discriminator's first width.
  al.disc_layers = 3  # Its stride-2 layers.
  al.disc_norm_groups = 32  # Its GroupNorm groups.

  # --- Image conditions, made from the clean image (training) or given (sampling).
  c.cond = k = ml_collections.ConfigDict()
  # "" none, or a name of conditioning.conditions.IMAGE_CONDITIONS (super-resolution,
  # colourisation, inpainting: docs/conditioning.md).
  k.image = ""
  k.sr_factor = 4  # sr: the input is image_size / sr_factor pixels wide.
  k.hole_min = 0.3  # inpaint: the hole's sides are uniform in [hole_min, hole_max]
  k.hole_max = 0.6  #   of the image side, at a random position.

  # --- Diffusion: the forward process and what the network predicts.
  c.diffusion = f = ml_collections.ConfigDict()
  f.schedule = "linear"  # Process: core.schedules.SCHEDULES (docs/processes.md)
  f.num_steps = 1000  # Discrete steps T (times i/T) for linear/cosine; 0 = continuous time.
  f.beta_start = 1e-4  # linear: first beta.
  f.beta_end = 0.02  # linear: last beta.
  f.cosine_s = 0.008  # cosine: offset s of Nichol & Dhariwal.
  f.beta_min = 0.1  # vp, subvp: beta(0) of score_sde's SDE.
  f.beta_max = 20.0  # vp, subvp: beta(1).
  f.log_snr_max = 13.3  # linear_logsnr: log-SNR at t = 0 (VDM: -gamma_min; learned: initial).
  f.log_snr_min = -5.0  # linear_logsnr: log-SNR at t = 1 (VDM: -gamma_max; learned: initial).
  f.learned_hidden = 1024  # learned: width of the monotone network's sigmoid layer.
  f.sigma_min = 0.002  # ve, edm: smallest noise level.
  f.sigma_max = 80.0  # ve, edm: largest noise level.
  f.rho = 7.0  # edm: warp of the sigma grid.
  f.prediction = "eps"  # Network target: core.parameterisation.PREDICTIONS.
  f.sigma_data = 0.5  # edm target and weighting: the data's standard deviation.
  f.weighting = "simple"  # Loss weighting: core.diffusion.WEIGHTINGS.
  f.min_snr_gamma = 5.0  # min_snr: gamma.
  f.time_sampling = "uniform"  # Training times: core.diffusion.TIME_SAMPLING.
  f.t_min = 1e-5  # Continuous time: smallest training time.
  f.p_mean = -1.2  # lognormal: mean of log lambda (lambda = sigma / alpha).
  f.p_std = 1.2  # lognormal: std of log lambda.

  # --- Training.
  c.training = t = ml_collections.ConfigDict()
  t.batch_size = 64  # Global batch, split over all devices of all processes.
  t.microbatches = 1  # Gradient accumulation: microbatches per step (divides the per-device batch).
  t.num_steps = 3000  # Total optimizer steps.
  t.label_dropout = 0.1  # Probability a label is replaced by the null label (CFG).
  t.text_dropout = 0.0  # Probability a caption is replaced by the empty prompt (CFG).
  t.image_dropout = 0.0  # Probability the conditioning image is zeroed (CFG).
  t.ema_decay = 0.999  # EMA of the parameters, used for sampling.
  t.log_every = 100  # Steps between metric logs (stdout and TensorBoard).
  t.checkpoint_every = 1000  # Steps between checkpoints (and one at the end).
  t.keep_checkpoints = 3  # Checkpoints kept; older ones are deleted.
  t.sample_at_end = True  # Write a sample set when training finishes.
  # Updates with a non-finite loss, gradient or result are skipped (state unchanged);
  # this many in a row stop the run with an error.
  t.max_consecutive_skips = 10
  t.async_checkpoints = True  # Write checkpoints in the background while training goes on.
  # Persistent XLA compilation cache (local or gs://), so that a resumed run skips
  # compiling; "" = $JAX_COMPILATION_CACHE_DIR if set, else WORKDIR/compilation_cache;
  # "none" = off.
  t.compilation_cache_dir = ""
  # A workdir lock (WORKDIR/lock.json) held by a run on another host that has not
  # refreshed it for this long is taken over (on this host: when its process is gone).
  t.lock_stale_minutes = 30.0

  # --- Device mesh: data x fsdp (docs/pods.md). The batch is split over all devices.
  c.mesh = g = ml_collections.ConfigDict()
  # Devices on the fsdp axis (divides the device count): parameters, EMA and optimizer
  # state are split over them (FSDP / ZeRO-3; training.mesh.fsdp_spec's rule by shape),
  # the rest of the devices hold copies; 1 = pure data parallelism (all replicated).
  g.fsdp = 1
  g.fsdp_min_size = 4096  # Arrays of fewer elements stay replicated (biases, norm scales).

  # --- Optimizer: AdamW with warmup and global-norm clipping.
  c.optim = o = ml_collections.ConfigDict()
  o.lr = 2e-3  # Peak learning rate.
  o.warmup_steps = 200  # Linear warmup from 0.
  o.lr_schedule = "cosine"  # After warmup: training.optimizer.LR_SCHEDULES.
  o.grad_clip = 1.0  # Clip the gradient's global norm; 0 = off.
  o.weight_decay = 0.0  # Decoupled weight decay.
  o.b1 = 0.9  # Adam beta1.
  o.b2 = 0.999  # Adam beta2.
  o.eps = 1e-8  # Adam epsilon.

  # --- Sampling (end of training and --mode=sample), from the EMA parameters.
  c.sample = s = ml_collections.ConfigDict()
  s.sampler = "ddim"  # core.samplers.SAMPLERS (docs/processes.md gives their NFE).
  s.num_steps = 100  # Grid steps N (NFE = N; heun 2N - 1; pc N + corrector_steps (N - 1)).
  s.grid = "uniform"  # Time grid: core.samplers.GRIDS.
  s.rho = 7.0  # edm grid: warp.
  s.t_min = 1e-3  # Continuous time: last nonzero time of the grid.
  s.t_max = 1.0  # First time of the grid.
  # Start no noisier than sigma/alpha = lambda_max (EDM: 80); every grid honours it.
  # 160 leaves linear T = 1000 (157), vp, ve, edm at t_max and caps cosine and flow.
  s.lambda_max = 160.0
  s.eta = 0.0  # DDIM noise: 0 deterministic, 1 = DDPM posterior.
  s.ddpm_variance = "posterior"  # ddpm step variance: core.samplers.DDPM_VARIANCES.
  s.churn = 0.0  # euler/heun: EDM's S_churn (stochasticity); 0 = deterministic.
  s.churn_min = 0.0  # Churn only for lambda in [churn_min, churn_max].
  s.churn_max = 1e9
  s.churn_noise = 1.0  # EDM's S_noise.
  s.corrector_steps = 1  # pc: Langevin corrector steps per time.
  s.corrector_snr = 0.16  # pc: Langevin signal-to-noise ratio.
  s.guidance_scale = 1.0  # Classifier-free guidance on labels: 1 = none, >1 stronger.
  s.text_guidance_scale = 1.0  # ... on text (needs training.text_dropout > 0).
  s.image_guidance_scale = 1.0  # ... on the image condition (needs training.image_dropout > 0).
  # Guide (all of the above, and autoguidance) only where sigma = sigma_t/alpha_t lies in
  # (lo, hi]; () = everywhere. Kynkaanniemi et al. 2024 (EDM2): (0.28, 5.42).
  s.guidance_interval = ()
  # Autoguidance (Karras et al. 2024) by the model of --guide_from=WORKDIR[:STEP]:
  # D_bad + w (D - D_bad); 1 = none (--mode=sample only).
  s.autoguidance_scale = 1.0
  # Conditions (captions, image conditions) not given on the command line come from
  # the first num_samples examples of this split.
  s.cond_split = "test"
  # Image conditions: move each sample to the nearest image that satisfies its
  # condition exactly (sr: downsamples to the input; gray: has the input's luminance;
  # inpaint: keeps the known pixels).
  s.project = False
  s.clip_denoised = True  # Clip x0_hat to [-1, 1] at every step.
  s.num_samples = 100  # Samples per set; labels cycle evenly over the classes.
  s.batch_size = 100  # Samples per compiled call (divisible by the device count).
  s.seed = 1  # Sampling PRNG seed (independent of training).

  # --- Evaluation (--mode=eval, and periodic evaluation while training), from the EMA
  # parameters: the likelihood of a split and sample metrics (docs/evaluation.md).
  c.eval = e = ml_collections.ConfigDict()
  # Comma-separated names of evaluation.eval_config.METRICS: "bpd" (likelihood of
  # eval.split), "fd", "kid", "precision", "recall", "is" (of eval.num_samples samples).
  e.metrics = "bpd"
  e.every_steps = 0  # While training: evaluate every N steps (and at the end); 0 = off.
  e.best_metric = ""  # Keep DIR/checkpoints_best/<step> at the best value of this metric.
  e.num_samples = 1000  # Samples for the sample metrics (sampled as the sample section says).
  # Network whose features the sample metrics compare: evaluation.features.FEATURE_NETS,
  # or "auto" (the bundled dataset's own offline network, else inception).
  e.feature_net = "auto"
  e.inception_weights = "inception_fid.npz"  # inception: the converted weight file.
  e.reference_split = "train"  # Real images the samples are compared with (cached).
  e.reference_examples = 0  # Reference images used; 0 = the whole split.
  e.split = "test"  # bpd: tfds split to evaluate.
  e.num_examples = 0  # bpd: examples to evaluate; 0 = the whole split.
  e.batch_size = 64  # Examples per compiled call (bpd; feature extraction).
  e.method = "ode"  # evaluation.likelihood.METHODS: probability-flow ODE or discrete bound.
  e.ode_steps = 200  # Heun steps, geometric in lambda (2 evaluations each).
  e.hutchinson_probes = 1  # Rademacher probes for the divergence.
  e.t_min = 1e-5  # The data is taken as x at t_min.
  e.t_max = 1.0  # The prior's time.
  # Cap on sigma/alpha at the prior: needed where alpha(t_max) = 0 (flow, continuous
  # cosine at t = 1); at 160 the prior's error is ~ sd^2 / (2 * 160^2) nats per dim.
  e.lambda_max = 160.0
  e.seed = 2  # Dequantisation and probe noise.
  return c


def runlocal(c: ml_collections.ConfigDict, dataset: str) -> ml_collections.ConfigDict:
  """Shrinks a config to a smoke test (seconds): a few steps on a tiny dataset."""
  c.data.name = dataset
  c.training.num_steps = 4
  c.training.log_every = 2
  c.training.checkpoint_every = 2
  c.optim.warmup_steps = 1
  c.sample.num_samples = c.sample.batch_size = 8
  c.sample.num_steps = 3
  return c
