"""The GKE TPU environment -> jax.distributed arguments, by the rules of JAX's own GKE detection."""

import pytest

from trainer.tpu_env import distributed_args, multi_host_tpu_env

HOSTS = ",".join(f"sawt-qwen3-asr-slice-0-{i}.sawt-qwen3-asr" for i in range(4))


def test_single_slice_coordinator_is_worker_0():
    args = distributed_args({"TPU_WORKER_HOSTNAMES": HOSTS, "TPU_WORKER_ID": "2"})
    assert args.coordinator_address == "sawt-qwen3-asr-slice-0-0.sawt-qwen3-asr:8482"
    assert (args.num_processes, args.process_id) == (4, 2)


def test_multislice_uses_the_megascale_coordinator_and_slice_offset():
    env = {
        "TPU_WORKER_HOSTNAMES": HOSTS,
        "TPU_WORKER_ID": "1",
        "MEGASCALE_NUM_SLICES": "2",
        "MEGASCALE_SLICE_ID": "1",
        "MEGASCALE_COORDINATOR_ADDRESS": "sawt-x-slice-0-0.sawt-x",
    }
    args = distributed_args(env, port=9999)
    assert args.coordinator_address == "sawt-x-slice-0-0.sawt-x:9999"
    assert (args.num_processes, args.process_id) == (8, 5)


def test_process_addresses_win_over_hostnames_as_in_jax():
    env = {"TPU_PROCESS_ADDRESSES": "a:8476,b:8476", "TPU_WORKER_HOSTNAMES": HOSTS, "TPU_WORKER_ID": "0"}
    assert distributed_args(env).coordinator_address == "a:8482"
    assert distributed_args(env).num_processes == 2


def test_single_host_and_missing_env():
    assert not multi_host_tpu_env({"TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"})
    assert multi_host_tpu_env({"TPU_WORKER_HOSTNAMES": HOSTS})
    with pytest.raises(ValueError, match="not a GKE TPU pod"):
        distributed_args({})
