#!/usr/bin/env bash
# The Debian packages the tests start from the repo's scripts: PostgreSQL and SLURM (tests/sweeper/test_cluster.py,
# through scripts/postgres.sh and scripts/slurm.sh) and Chromium (tests/ftrun/test_board.py, the board in a real
# browser; the font is for Chinese labels in its screenshots), and jemalloc, the allocator ftrun's runs preload where
# the machine has it (ftrun/allocator.py). Run as root or with sudo.
set -euo pipefail
sudo=$([ "$(id -u)" = 0 ] || echo sudo)
$sudo apt-get update
$sudo apt-get install -y --no-install-recommends postgresql util-linux slurmctld slurmd slurm-client munge \
    chromium fonts-wqy-zenhei libjemalloc2
