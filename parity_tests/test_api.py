"""jaxsae and torchsae mirror each other: file names, public names, argument names."""

import inspect
import pathlib
import subprocess
import sys

import jaxsae
import torchsae

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Pure math: same argument names, in the same order.
PURE = [
    "topk",
    "topk_mask",
    "lifetime_topk",
    "lifetime_topk_mask",
    "apply_mask",
    "l1_penalty",
    "kl_divergence",
    "kl_penalty",
    "sparsity_penalty",
    "mse_loss",
    "bce_loss",
    "reconstruction_loss",
    "loss_terms",
    "activate",
    "sparsity_mask",
    "check_input",
    "from_state_dict",
]
# Framework-shaped on purpose: JAX passes (params, config), torch passes the module that
# holds its config. Names match; arguments follow each framework's idiom.
IDIOMATIC = {
    "save_checkpoint",
    "load_checkpoint",
    "to_state_dict",
    "untie",
    "encode",
    "evaluate_model",
    "evaluate_checkpoint",
    "load_foreign",
    "save_foreign",
}


def test_public_names_match():
    assert sorted(jaxsae.__all__) == sorted(torchsae.__all__)
    for name in jaxsae.__all__:
        assert hasattr(jaxsae, name) and hasattr(torchsae, name), name


def test_shared_names_are_the_same_objects():
    for name in ("SAEConfig", "ConfigError", "CheckpointError"):
        assert getattr(jaxsae, name) is getattr(torchsae, name)


# Modules one package has and the other need not, with the reason.
ONE_SIDED = {
    "jaxsae/conv.py": "how jaxsae computes the convolutions (kernels or matrix "
    "products on the CPU); torch's own Conv2d, ConvTranspose2d and max_pool2d are what it is tested against "
    "(tests/test_conv.py)",
    "jaxsae/cpu_kernels.py": "C++ kernels for the CPU where XLA's own top-k and "
    "sparse products run on one thread and its convolutions are slow; torch's topk, "
    "embedding_bag, index_add and oneDNN convolutions already run on every core "
    "(tests/test_cpu_kernels.py and tests/test_conv.py check the kernels against "
    "XLA's ops and torch's; the parity suite runs jaxsae with them against torchsae)",
    "jaxsae/mesh_select.py": "selections over latents sharded across devices; torch "
    "trains data parallel only (torchsae/distributed.py says what a torch user does "
    "instead)",
}


def test_module_files_match():
    files = {
        f"{pkg}/{p.name}"
        for pkg in ("jaxsae", "torchsae")
        for p in (ROOT / pkg).glob("*.py")
    }
    twins = {f.split("/")[1] for f in files - ONE_SIDED.keys()}
    for name in twins:
        assert {f"jaxsae/{name}", f"torchsae/{name}"} <= files, f"{name} has no twin"
    assert ONE_SIDED.keys() <= files


def test_pure_functions_take_the_same_arguments():
    for name in PURE:
        a = list(inspect.signature(getattr(jaxsae, name)).parameters)
        b = list(inspect.signature(getattr(torchsae, name)).parameters)
        assert a == b, f"{name}: jaxsae{a} vs torchsae{b}"
    callables = {
        n
        for n in jaxsae.__all__
        if callable(getattr(jaxsae, n)) and not inspect.isclass(getattr(jaxsae, n))
    }
    assert (
        callables == set(PURE) | IDIOMATIC
    )  # every function is in one list or the other


def test_output_fields_match():
    assert jaxsae.AutoencoderOutput._fields == torchsae.AutoencoderOutput._fields


def test_the_packages_never_import_each_other():
    code = (
        "import sys, jaxsae; assert 'torch' not in sys.modules and 'torchsae' not in sys.modules;"
        "import torchsae; import importlib;"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    code = "import sys, torchsae; assert 'jax' not in sys.modules and 'flax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_training_modules_share_their_contract():
    from jaxsae import layerwise as jl
    from jaxsae import training as jt
    from torchsae import layerwise as tl
    from torchsae import training as tt

    for name in (
        "make_optimizer",
        "corrupt",
        "make_train_step",
        "train",
        "init_state_dict",
        "FRAMEWORK",
    ):
        assert hasattr(jt, name) and hasattr(tt, name), name
    # train(run, out_dir, *, resume, data, progress, init, frozen, overwrite) and
    # pretrain(run, out_dir, *, resume, data, progress, init, overwrite): torch adds
    # device and compile.
    # jax's train also takes a mesh (data parallel over local devices)
    for a, b in ((jt.train, tt.train), (jl.pretrain, tl.pretrain)):
        a = [p for p in inspect.signature(a).parameters if p != "mesh"]
        b = inspect.signature(b).parameters
        assert list(a) == list(b)[: len(a)]
        assert list(b)[len(a) :] == ["device", "compile"]
    assert list(inspect.signature(jt.init_state_dict).parameters) == ["config", "seed"]
    assert list(inspect.signature(tt.init_state_dict).parameters) == ["config", "seed"]
    # The JAX epoch is a jitted scan (make_train_epoch/make_eval_metrics build jitted
    # functions); torch loops eagerly over resident tensors (train_epoch/eval_metrics).
    assert hasattr(jt, "make_train_epoch") and hasattr(tt, "train_epoch")
    assert hasattr(jt, "make_eval_metrics") and hasattr(tt, "eval_metrics")


# Dictionary SAEs (jaxsae/dictionary.py, torchsae/dictionary.py): pure math with the
# same argument names; torch's constructors also take a device (JAX places arrays on
# its default device).
DICTIONARY_PURE = [
    "jumprelu",
    "step",
    "gather_pre",
    "sparse_decode",
    "batchtopk_mask",
    "aux_mask",
    "threshold_value",
    "pre_activation",
    "encode",
    "decode",
    "forward",
    "loss_terms",
    "remove_parallel_component",
    "unit_rows",
    "update_threshold",
    "to_state_dict",
    "params_from_state_dict",
    "init_state",
    "make_train_step",
]


def test_dictionary_modules_mirror():
    from jaxsae import dictionary as jd
    from jaxsae import dictionary_training as jt
    from torchsae import dictionary as td
    from torchsae import dictionary_training as tt

    assert sorted(jd.__all__) == sorted(td.__all__)
    assert sorted(jt.__all__) == sorted(tt.__all__)
    assert set(DICTIONARY_PURE) <= set(jd.__all__)
    for name in DICTIONARY_PURE:
        a = list(inspect.signature(getattr(jd, name)).parameters)
        # torch's own placement: its device, and its split over torchrun's processes
        b = [
            p
            for p in inspect.signature(getattr(td, name)).parameters
            if p not in ("device", "split")
        ]
        assert a == b, f"dictionary.{name}: jax {a} vs torch {b}"
    # placement is each framework's own: torch's device, jax's (data, model) mesh
    for name in ("train", "train_array", "forward_numpy", "backend"):
        a = [p for p in inspect.signature(getattr(jt, name)).parameters if p != "mesh"]
        b = [
            p for p in inspect.signature(getattr(tt, name)).parameters if p != "device"
        ]
        assert a == b, f"dictionary_training.{name}: jax {a} vs torch {b}"


def test_convert_modules_share_their_contract():
    # load_foreign(path, format, *, fields, hookpoint) in both; torch adds device.
    from jaxsae import convert as jc
    from torchsae import convert as tc

    assert jc.__all__ == tc.__all__ == ["load_foreign", "save_foreign"]
    a = list(inspect.signature(jc.load_foreign).parameters)
    b = list(inspect.signature(tc.load_foreign).parameters)
    assert a == ["path", "format", "fields", "hookpoint"] and b == a + ["device"]
    assert list(inspect.signature(jc.save_foreign).parameters) == list(
        inspect.signature(tc.save_foreign).parameters
    )
