"""The score model: VE-SDE schedule and DSM loss (``sde``), the noise-conditional 3D UNet (``network``),
resumable training (``train``), the multiscale score-norm cache (``norms``) and image-level MSMA (``msma``)."""
