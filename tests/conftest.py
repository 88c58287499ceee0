"""Test set-up: four fake CPU devices, so multi-device code runs here as on a pod.

XLA's backend optimisations are off: the tests run few steps of tiny models, where compiling
dominates, and unoptimised compiles take a fraction of the time (results are the same up to
float rounding).
"""
import os

FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS",
                      f"--xla_force_host_platform_device_count=4 {FAST_COMPILE}")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
