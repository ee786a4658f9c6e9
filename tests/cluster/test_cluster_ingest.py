"""tests/integration/test_ingest.py against a 3-primary cluster with 16 partitions."""

from app.embedded import EmbeddedCluster
from app.settings import Settings
from tests.integration.test_ingest import *  # noqa: F403


async def test_a_plain_node_url_with_eventflow_redis_cluster_reaches_the_whole_cluster(
    redis_cluster: EmbeddedCluster, settings: Settings
) -> None:
    # The other way to say "cluster" (as a platform hands over a plain redis:// URL of one node):
    # EVENTFLOW_REDIS_CLUSTER=true. Events of every partition land, whichever node holds them.
    from redis.asyncio.cluster import RedisCluster

    from app.connections import connect
    from app.events import parse_batch
    from app.service import Services

    node = redis_cluster.nodes[0]
    config = Settings.from_env({"REDIS_URL": f"redis://127.0.0.1:{node.port}", "EVENTFLOW_REDIS_CLUSTER": "true",
                                "EVENTFLOW_PREFIX": settings.prefix, "EVENTFLOW_PARTITIONS": str(settings.partitions)})
    client = connect(config)
    try:
        assert isinstance(client, RedisCluster)
        body = b"[" + b",".join(b'{"type":"t","partitionkey":"k%d"}' % n for n in range(40)) + b"]"
        appended = await Services(client, config).ingest(parse_batch(body, "application/json"), "billing", {})
        assert len({a.partition for a in appended}) > 3  # spread over the partitions, so over the nodes
        for a in appended:
            assert (await Services(client, config).log.get(a.entry_id, None)).entry_id == a.entry_id
    finally:
        await client.aclose()
