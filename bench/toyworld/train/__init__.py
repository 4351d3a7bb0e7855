"""Train every toy-world network from a seed, on CPU, resumably.

Stages (``--stage``; ``evaluators`` = the three ``eval_*`` stages, ``generator`` = clip, vae,
vae_decoder, unet, ``all`` = everything):

- ``clip``: a small transformers ``CLIPModel`` trained contrastively on captioned renders; its text
  tower becomes the pipeline's ``text_encoder`` (frozen afterwards), its vision tower the
  ``image_encoder``.
- ``vae``: diffusers ``AutoencoderKL`` 64×64×3 → 4×16×16 (L1 + MSE + tiny KL); the latent scaling
  factor is set from the latent std of training renders. This fixes the latent space.
- ``vae_decoder``: a short fine-tune of the decoder alone on slightly noised latents of the frozen
  encoder (decoded diffusion samples are never exact encoder outputs); needs only ``vae``, so it can
  run beside ``unet``.
- ``unet``: diffusers ``UNet2DConditionModel`` (ε-prediction, SD's scaled-linear betas 0.00085–0.012,
  1000 steps, min-SNR-5 weights, EMA, 10 % empty-caption dropout for CFG) on frozen VAE latents and
  frozen text-encoder states; exported with the other parts as an SD pipeline folder.
- ``eval_clip`` / ``eval_vit`` / ``eval_alex``: the evaluator backbones (``bench.toyworld.evaluators``),
  trained on a separate pool of renders, independently of the generator.

Determinism and resume: the batch and all noise of step k are pure functions of (seed, stage, k)
(no dropout anywhere), and a checkpoint (model, optimizer, EMA, step) is written atomically every
``ckpt_every`` steps under ``--out``. Killing the process and running the same command again
continues from the last checkpoint and reaches the same weights as an uninterrupted run (same
machine and thread count). Raising ``--steps-<stage>`` later continues a finished stage.

Modules: ``common`` (config, pools, checkpoints, the loop), one per stage group (``gen_clip``, ``vae``,
``unet``, ``evaluators``) and ``stages`` (the stage table and ``run``).
"""
