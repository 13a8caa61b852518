"""The audit log's pure logic (docs/audit.md): the hash chain (`chain`), signed checkpoints (`checkpoints`),
verification over any iterable of events (`verify`), the export's line formats (`export`), what a change records
(`changes`) and which data-plane decisions become events (`decisions`).

No I/O, no clock and no event loop here: the store, the API, the CLI and the offline verifier
(`agentledger audit verify --file`) all share these functions, so an export is checked by exactly the code that
wrote the chain.
"""
