"""flstack beside NVIDIA FLARE and Flower on one workload, in one sitting (bench/README.md)."""
