"""The fleet engine: each worker drives its shard of devices (TCP, TLS, MQTT) from one asyncio loop.

    from fleetsim.engine import run_shard, ShardSpec, DeviceSpec
    result = run_shard(scenario, shard_spec, identities)   # -> ShardResult (picklable, columnar)
"""

from fleetsim.engine.identity import Identity, IdentitySource, MemoryIdentities, PkiIdentities
from fleetsim.engine.outcome import Failure, Phase, classify
from fleetsim.engine.shard import DeviceSpec, ShardResult, ShardSpec, run_shard

__all__ = ["DeviceSpec", "Failure", "Identity", "IdentitySource", "MemoryIdentities", "Phase", "PkiIdentities",
           "ShardResult", "ShardSpec", "classify", "run_shard"]
