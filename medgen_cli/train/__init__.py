"""Training machinery shared by the trainable steps: the loop and its tasks, losses, checkpoints,
EMA, learning-rate schedules, mixed precision, distributed setup and logging.

- `loop`: `Trainer` and the `TrainTask` protocol; `ae_task`: the autoencoder task.
- `checkpoint`: atomic, safe-to-load checkpoints; `ema`: weight EMA; `schedule`: warmup + decay.
- `precision`: device and autocast; `distributed`: torchrun setup, DDP wrapping, collectives.
- `losses`: reconstruction losses and SSIM/PSNR on the data range; `metrics_log`: the metrics.jsonl file (pictures come from `medgen_cli.viz`).
"""
