"""Builds the optional C++ (and, where CUDA is available, CUDA) extension sidmlp_kernels._C.

The package works without it (PyTorch reference path). Build with
`pip install --no-build-isolation .` so the installed torch is reused.
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
    extra = {"cxx": ["-O3", "-std=c++17", "-fopenmp"]}
    kwargs = dict(
        name="sidmlp_kernels._C",
        sources=sources + (cuda_sources if use_cuda else []),
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )
    if use_cuda:
        extra["nvcc"] = ["-O3", "-std=c++17"]
        kwargs["define_macros"] = [("SIDMLP_WITH_CUDA", "1")]
        ext = cpp_extension.CUDAExtension(**kwargs)
    else:
        ext = cpp_extension.CppExtension(**kwargs)
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extension_modules()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
