# TEMP-SHIM (issue 20 merge): remove
"""Moved to ``jimunet.app.recipes``; this file only keeps the old import path working until the merge."""
from .app.recipes import (IMAGE_SIZE, MNIST_TRAIN, MODELS, NUM_CLASSES, REDUCTIONS, RESNET_DEFAULTS,  # noqa: F401
                          RESUMABLE_FIELDS, SELF_TEST_EVAL, SELF_TEST_TRAIN, ConfigError, MNISTConfig, build,
                          describe_recipe, fake_data, make_augment, per_sample)
