"""Kiln as a client (and worker) of a REAPI v2 engine.

- ``settings``: where the remote is and how to reach it (config, options, env).
- ``channel``: one gRPC channel per endpoint, TLS and the bearer token.
- ``retry``: which gRPC failures are transient and how they are retried.
- ``client``: the REAPI services (capabilities, CAS, ByteStream, action
  cache, execution), every downloaded blob checked against its digest.
- ``cache``: the bridge between the local store and the remote one (what a
  build looks up, downloads and pushes).
- ``execution``: steps run by the engine's workers.
- ``worker``: ``kiln worker``, a Remote Workers API bot running Kiln steps.

Nothing here is imported unless a build or command uses a remote.
"""
