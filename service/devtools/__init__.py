"""Local processes for `sealednotes dev`, the tests and the benchmarks: an embedded
PostgreSQL and an OpenBao server. Not shipped in the wheel."""
