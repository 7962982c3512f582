"""watcherd's test kit: real regtest nodes, a devnet directory, config writers, a webhook receiver, a fake chain.

The tests, `scripts/devnet`, the demo and the bench stand on it; the shipped `watcherd` package never imports
it (an import-linter contract in pyproject.toml, checked by tests/test_layers.py), and the wheel does not
include it. Modules, one concern each:

    process.py       one lifecycle for every node program: spawn, wait for RPC, find again by pid, stop
    rpc.py           JSON-RPC over HTTP and NodeRPCError, for every node kind
    bitcoin_node.py  bitcoind (Bitcoin SV code base, ZMQ) and litecoind (segwit, RBF, MWEB) regtest nodes
    eth_node.py      anvil, with the test ERC-20 tokens and the forwarder contract
    monero_node.py   monerod plus the customer's monero-wallet-rpc
    configs.py       the [chains.<name>] tables of a watcherd config for those nodes
    devnet.py        a directory of nodes plus state.json, the operator's keys, a whole daemon config
    receiver.py      a webhook endpoint that checks signatures, like a billing system's
    fake.py          an in-memory chain adapter for driving the core without a node
    faultproxy.py    a proxy that makes a node misbehave on purpose
"""
