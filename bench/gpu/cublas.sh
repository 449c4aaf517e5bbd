# Sourced by the GPU machine's scripts: puts cuBLAS on the library path.
# mixc (cudarc) loads libcublas.so or libcublas.so.12; CUDA 13 names it
# libcublas.so.13, so the first one found is linked under the plain name
# (from a CUDA toolkit, else from the pip package nvidia-cublas).
lib=$(ls /usr/local/cuda/lib64/libcublas.so* /usr/local/cuda*/targets/x86_64-linux/lib/libcublas.so* 2>/dev/null | head -1)
if [ -z "$lib" ]; then
  lib=$(python3 -c 'import glob, nvidia; print(next(iter(sorted(f for p in nvidia.__path__ for f in glob.glob(p + "/*/lib/libcublas.so*"))), ""))' 2>/dev/null)
fi
if [ -n "$lib" ]; then
  mkdir -p /tmp/mixc-cublas && ln -sf "$lib" /tmp/mixc-cublas/libcublas.so
  export LD_LIBRARY_PATH="/tmp/mixc-cublas:$(dirname "$lib"):${LD_LIBRARY_PATH:-}"
  echo "cuBLAS: $lib"
else
  echo "cuBLAS not found"
fi
