"""Ship the native sources inside the package: cpp_ext/ and plugins_trt/ -> sdk/_native/.

Everything else lives in pyproject.toml. The C++ CPU kernel is still compiled on first use
(sdk/kernels/cpu.py), the CUDA kernels are still JIT-built (sdk/kernels/cuda.py) and the
TensorRT plugin is still a CMake project; the wheel only has to carry their sources.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
NATIVE_TREES = ("cpp_ext", "plugins_trt")
# Build output and caches never go into the wheel.
SKIP = shutil.ignore_patterns("build", "build-*", "build_*", "__pycache__", "*.pyc", "*.o", "*.so", "CMakeCache.txt",
                              "CMakeFiles")


class BuildPyWithNative(build_py):
    """build_py that also copies the native source trees into <build_lib>/sdk/_native/."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):  # pip install -e: the checkout's trees are used in place
            return
        target = Path(self.build_lib) / "sdk" / "_native"
        for name in NATIVE_TREES:
            src = HERE / name
            if not src.is_dir():  # building from an sdist that lacks them would ship a wheel without kernels
                raise SystemExit(f"setup.py: {src} is missing; the wheel must carry the native sources")
            dst = target / name
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst, ignore=SKIP)


setup(cmdclass={"build_py": BuildPyWithNative})
