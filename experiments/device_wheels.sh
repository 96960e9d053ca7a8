#!/bin/bash
# The Python packages bayes_mbrl needs that the GPU machines' image lacks, as wheels for
# its Python 3.12, downloaded HERE into .whl/ (ignored by git) so that a device call can
# carry them: run this once before `OUT=dir bash experiments/device_check.sh` on the
# device machine with carry [".whl"]. The image already holds torch, gpytorch, botorch,
# numpy, scipy, pandas, matplotlib, xarray, h5py, tqdm, opt-einsum and cloudpickle
# (/work/.library/device/KINDS.md); the versions below are the ones the CPU venv runs.
set -eu
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.whl/' >> .git/info/exclude; }
rm -rf .whl && mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl \
  pyro-ppl==1.9.2 pyro-api==0.1.2 gymnasium==1.4.0 farama-notifications==0.0.6 \
  arviz==0.23.4 xarray-einstats==0.9.1 h5netcdf==1.8.3 platformdirs==4.14.9 \
  tomli-w==1.2.0 stable-baselines3==2.9.2
ls -l .whl && du -sh .whl
