"""summoner: a Jitsu-style DNS server that summons unikernels on demand."""

__version__ = "0.1.0"
