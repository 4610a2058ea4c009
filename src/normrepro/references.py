"""Published numbers that more than one study kind prints beside ours (transcribed from
../shared/REFERENCES.md). A kind's own published numbers live in its module (src/studies/).

Units are percent, as the sources print them. Keys use the pipeline's own names (catalog model
and norm names, batch sizes) so a view can look a cell up directly.
"""

# Group Normalization (Wu & He, ECCV 2018): ResNet-50, ImageNet validation error %.
# Used by batch_sweep, group_sweep and norm_compare: another dataset and a network whose layers
# have 64-2048 channels, so only the shape of a curve can be compared with ResNet-20 on CIFAR.
GN_PAPER_SOURCE = "Wu & He, Group Normalization (ECCV 2018): ResNet-50, ImageNet val error %"
GN_PAPER_DATASET = "imagenet"
GN_ERROR_BY_BATCH = {  # images per GPU -> error %
    "bn": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
    "gn": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1},
}
GN_ERROR_BY_METHOD = {"bn": 23.6, "ln": 25.3, "in": 28.4, "gn": 24.1}  # batch 32 per GPU
GN_ERROR_BY_GROUPS = {64: 24.6, 32: 24.1, 16: 24.6, 8: 24.4, 4: 24.6, 2: 24.7, 1: 25.3}  # G=1: LN
GN_ERROR_BY_CHANNELS_PER_GROUP = {64: 24.4, 32: 24.5, 16: 24.2, 8: 24.3, 4: 24.8, 2: 25.6, 1: 28.4}

# CIFAR-10 anchors: the original papers' test error %, keyed by catalog model name (with BN).
CIFAR10_ERROR_ANCHORS = {
    "resnet20": (8.75, "He et al. 2015"),
    "resnet110": (6.43, "He et al. 2015"),
    "resnet164": (5.93, "He et al. 2016 (bottleneck)"),
    "preact_resnet164": (5.46, "He et al. 2016 (pre-activation)"),
    "wrn28_10": (3.89, "Zagoruyko & Komodakis 2016 (dropout 0.3)"),
}

# Choices behind every study built on the ResNet-20 recipe (params.yaml `recipes.resnet20`),
# mostly where seed 001 is silent: (label, run-config key whose value is shown, why).
RESNET20_CHOICES = [
    (
        "shortcuts: 1x1 projections where the shape changes",
        "",
        "as seed 001; about 1 % more parameters than He et al.'s option A, whose 8.75 % error "
        "is quoted as the ResNet-20 anchor",
    ),
    ("weight decay", "optim.weight_decay", "seed 001 silent: the ResNet paper's CIFAR value"),
    ("weight decay on norm gains", "optim.wd_on_norm", "seed 001 silent"),
    ("Nesterov", "optim.nesterov", "seed 001 silent"),
    ("lr", "lr", "0.1 at batch 128 scaled linearly with batch size, the GN paper's rule"),
]
