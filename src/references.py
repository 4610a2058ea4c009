"""Published numbers the report prints beside ours, as data (transcribed from REFERENCES.md).

Units are percent, as the sources print them. Keys use the pipeline's own names (catalog model
and norm names, batch sizes, learning rates) so the report can look a cell up directly.
"""

# Seed 000 (Chilumuru, "WRN-GN"), Table 2: CIFAR-10 test top-1 accuracy %, keyed (model, norm).
TABLE2_SOURCE = "seed 000 (WRN-GN, Chilumuru), Table 2: CIFAR-10 test top-1 %"
TABLE2_TEST_ACC = {
    ("resnet164", "bn"): 91.05,
    ("preact_resnet164", "bn"): 92.24,
    ("wrn28_10", "bn"): 91.13,
    ("wrn28_10", "gn_ws"): 94.75,
}

# Group Normalization (Wu & He, ECCV 2018): ResNet-50, ImageNet validation error %.
GN_PAPER_SOURCE = "Wu & He, Group Normalization (ECCV 2018): ResNet-50, ImageNet val error %"
GN_ERROR_BY_BATCH = {  # images per GPU -> error %
    "bn": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
    "gn": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1},
}
GN_ERROR_BY_METHOD = {"bn": 23.6, "ln": 25.3, "in": 28.4, "gn": 24.1}  # batch 32 per GPU
GN_ERROR_BY_GROUPS = {64: 24.6, 32: 24.1, 16: 24.6, 8: 24.4, 4: 24.6, 2: 24.7, 1: 25.3}  # G=1: LN
GN_ERROR_BY_CHANNELS_PER_GROUP = {64: 24.4, 32: 24.5, 16: 24.2, 8: 24.3, 4: 24.8, 2: 25.6, 1: 28.4}

# Seed 001 (Franke, GN project): qualitative claim only (Figure 1 has no printed numbers).
BATCH_SWEEP_CLAIM = (
    "seed 001 (ResNet-20, CIFAR-10, 5 seeds): GN error flat across batch sizes; "
    "BN error rises fast below batch 8."
)

# Seed 002 (Potala, NF-ResNet): validation accuracy % after 40 epochs, keyed (lr, batch_size).
NF_SOURCE = "seed 002 (NF-ResNet, Potala): CIFAR-10"
NF_GRID_VAL_ACC = {
    (0.001, 32): 79.88,
    (0.001, 64): 73.54,
    (0.001, 128): 65.76,
    (0.001, 256): 54.54,
    (0.01, 32): 83.65,
    (0.01, 64): 85.01,
    (0.01, 128): 84.23,
    (0.01, 256): 81.36,
    (0.1, 32): 10.14,
    (0.1, 64): 10.14,
    (0.1, 128): 10.14,
    (0.1, 256): 10.14,
}
NF_GRID_DIVERGED_LR = 0.1  # every lr = 0.1 cell of the published grid stayed at chance (10.14 %)
NF_FINAL = {"lr": 0.01, "batch_size": 64, "epochs": 200, "test_acc": 89.28, "best_val_acc": 89.78}

# Seed 003 (Arora, GN blog post): Oxford Pets, qualitative claim only.
PETS_CLAIM = (
    "seed 003 (ResNet-34/50 on Oxford Pets): GN alone was worse than BN even at batch 4; "
    "GN + WS beat BN at batch 1."
)

# CIFAR-10 anchors: test error %, keyed by catalog model name (norm bn, the papers' setting).
CIFAR10_ERROR_ANCHORS = {
    "resnet20": (8.75, "He et al. 2015"),
    "resnet110": (6.43, "He et al. 2015"),
    "resnet164": (5.93, "He et al. 2016 (bottleneck)"),
    "preact_resnet164": (5.46, "He et al. 2016 (pre-activation)"),
    "wrn28_10": (4.00, "Zagoruyko & Komodakis 2016"),
}
