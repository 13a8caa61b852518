"""Payments over x402: assets, payment requirements and headers, facilitators (docs/paid-endpoints.md).

The x402 package does the protocol (types, header encodings, EIP-712 hashing, signature checks); this package
decides what we ask for, which facilitator checks and settles it, and how its failures reach a client. The pure
parts (assets, amounts, a proof's identity) live in core/assets.py and core/proofs.py.
"""
