"""The CPU's feature flags as Linux reports them (/proc/cpuinfo), read independently of the solver's own
__builtin_cpu_supports checks so the tests can say which kernel family `auto` must pick."""


def flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
