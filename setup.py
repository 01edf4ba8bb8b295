"""Builds the optional C++ (and, where CUDA is available, CUDA) extension sidmlp_kernels._C.

The package works without it (PyTorch reference path). Build with
`pip install --no-build-isolation .` so the installed torch is reused.

Environment:
  SIDMLP_NO_EXTENSION=1   skip the extension entirely
  SIDMLP_FORCE_CUDA=1     compile csrc/*.cu even when no GPU is visible (needs a CUDA torch)
  SIDMLP_CUDA_ARCHS="80;90"  GPU targets (default: torch's TORCH_CUDA_ARCH_LIST logic)
  MAX_JOBS=N              parallel compile jobs (ninja)
"""

import glob
import os

from setuptools import setup


def extension_modules():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("python/*.cpp"))
    if not sources or os.environ.get("SIDMLP_NO_EXTENSION") == "1":
        return [], {}
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension
    except ImportError:
        print("sidmlp-kernels: torch not importable at build time; skipping the C++ extension")
        return [], {}
    cuda_sources = sorted(glob.glob("csrc/*.cu"))
    use_cuda = bool(cuda_sources) and cpp_extension.CUDA_HOME is not None and (
        torch.cuda.is_available() or os.environ.get("SIDMLP_FORCE_CUDA") == "1"
    )
    if cuda_sources and not use_cuda:
        print("sidmlp-kernels: building the CPU extension only (no CUDA toolkit/torch CUDA)")
    # torch >= 2.10 headers are C++20; csrc itself stays C++17 (CMake, nvcc check).
    extra = {"cxx": ["-O3", "-std=c++20", "-fopenmp"]}
    kwargs = dict(
        name="sidmlp_kernels._C",
        sources=sources + (cuda_sources if use_cuda else []),
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )
    if use_cuda:
        archs = os.environ.get("SIDMLP_CUDA_ARCHS")
        if archs:
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", " ".join(
                f"{a[:-1]}.{a[-1]}" for a in archs.replace(",", ";").split(";") if a))
        extra["nvcc"] = ["-O3", "-std=c++20"]
        kwargs["define_macros"] = [("SIDMLP_WITH_CUDA", "1")]
        ext = cpp_extension.CUDAExtension(**kwargs)
    else:
        ext = cpp_extension.CppExtension(**kwargs)
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
