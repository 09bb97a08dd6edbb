"""Named starting points for a run (``scripts/train.py --preset NAME``): each a whole
RunConfig. The reproduction catalogue (reproduction.py) builds on some of them."""

from __future__ import annotations

from saecommon.config import SAEConfig
from saecommon.train_config import RunConfig, TrainConfig

# A 784-64-784 sigmoid autoencoder with a KL penalty (rho 0.05, weight 0.1, mean).
_KL = SAEConfig(
    input_dim=784,
    hidden_dims=(64,),
    activation="sigmoid",
    code_activation="sigmoid",
    output_activation="sigmoid",
    penalty="kl",
    penalty_weight=0.1,
    kl_rho=0.05,
    kl_reduction="mean",
    loss="mse",
)
# The seed tutorial's 784-L-784 KL autoencoder: _KL with a tanh output for MNIST
# scaled to [-1, 1] (Normalize((0.5,), (0.5,))).
_TANH_KL = _KL.replace(output_activation="tanh")

PRESETS: dict[str, RunConfig] = {
    # The FashionMNIST L1 tutorial's 10-layer model (trained on MNIST unless told
    # otherwise: --dataset tfds:fashion_mnist or a Fashion-MNIST IDX folder).
    "fashion-l1-deep": RunConfig(
        SAEConfig(
            input_dim=784,
            hidden_dims=(256, 128, 64, 32, 16),
            activation="relu",
            code_activation="relu",
            output_activation="relu",
            penalty="l1",
            penalty_weight=1e-3,
            l1_layers="hidden",
            loss="mse",
        ),
        TrainConfig(epochs=10, batch_size=32, learning_rate=1e-3),
    ),
    "mnist-topk": RunConfig(
        SAEConfig(
            input_dim=784,
            hidden_dims=(64,),
            activation="leaky_relu",
            code_activation="leaky_relu",
            output_activation="sigmoid",
            topk=16,
            lifetime_rate=0.25,
            loss="mse",
        ),
        TrainConfig(epochs=20, batch_size=512, learning_rate=1e-3),
    ),
    "mnist-kl": RunConfig(
        _KL,
        TrainConfig(epochs=20, batch_size=512, learning_rate=1e-3),
    ),
    # Greedy layer-wise pretraining of a deep 784-128-64-32-2 autoencoder (a 2-D code
    # to look at), one stage per encoder layer, then the whole model fine-tuned.
    "mnist-layerwise": RunConfig(
        SAEConfig(
            input_dim=784,
            hidden_dims=(128, 64, 32, 2),
            activation="relu",
            code_activation="identity",
            output_activation="sigmoid",
            loss="mse",
        ),
        TrainConfig(
            epochs=10, batch_size=256, learning_rate=1e-3, layerwise_epochs=(3, 3, 3, 3)
        ),
    ),
    # The tutorial's data: pixels scaled to [-1, 1]. The -denoise variant adds Gaussian
    # noise of std 1 in that space (std 0.5 in [0, 1] pixels), clipped to [-1, 1].
    "mnist-tanh-kl": RunConfig(
        _TANH_KL,
        TrainConfig(
            epochs=20, batch_size=512, learning_rate=1e-3, pixel_scale="symmetric"
        ),
    ),
    "mnist-tanh-kl-denoise": RunConfig(
        _TANH_KL,
        TrainConfig(
            epochs=20,
            batch_size=512,
            learning_rate=1e-3,
            pixel_scale="symmetric",
            noise="gaussian",
            noise_std=1.0,
        ),
    ),
    "mnist-denoise": RunConfig(
        SAEConfig(
            input_dim=784,
            hidden_dims=(64,),
            activation="leaky_relu",
            code_activation="leaky_relu",
            output_activation="sigmoid",
            loss="mse",
        ),
        TrainConfig(
            epochs=20,
            batch_size=512,
            learning_rate=1e-3,
            noise="masking",
            mask_fraction=0.25,
        ),
    ),
}
