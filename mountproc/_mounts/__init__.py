"""The mount contract: the mount table, probes under a time limit, the preflight of the source,
scratch and outputs, a worker's view of them, and the source watched while a run goes on."""
