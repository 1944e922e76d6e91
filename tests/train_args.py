"""Command-line arguments of a tiny training run shared by the trainer tests:
ResNet-18 at 32 -> 64 px, batch 8, 2 epochs, on the CPU."""


def tiny_args(betons, folder, *extra):
    train, val = betons
    return [f'--data.train_dataset={train}', f'--data.val_dataset={val}',
            '--data.num_workers=2', '--model.arch=resnet18', '--resolution.min_res=32',
            '--resolution.max_res=64', '--resolution.start_ramp=0',
            '--resolution.end_ramp=2', '--validation.resolution=32',
            '--validation.batch_size=8', '--training.batch_size=8', '--training.epochs=2',
            '--training.device=cpu', '--lr.lr=0.4', '--lr.peak_epoch=1',
            '--logging.progress=0', '--logging.log_every=2', f'--logging.folder={folder}',
            *extra]
