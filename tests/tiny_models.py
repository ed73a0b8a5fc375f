"""Settings for the smallest detectors of each method that still run every code path
(64² inputs, one epoch, narrow heads): the tests that check behaviour, not accuracy."""

TINY = {"resize": 64, "crop": 64, "batch_size": 4, "device": "cpu"}
TINY_SETTINGS = {
    "patchcore": TINY,
    "pbas": {**TINY, "epochs": 1, "discriminator_hidden": 32},
    "glass": {**TINY, "epochs": 1, "discriminator_hidden": 32, "las": False},
    "uniad": {
        **TINY,
        "resize": (64, 64),
        "crop": None,
        "epochs": 1,
        "hidden_dim": 32,
        "heads": 4,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "feedforward_dim": 64,
        "neighbor_size": 3,
    },
}
