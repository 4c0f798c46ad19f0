"""The services vidops starts and finds: the stack profile on one machine, its PostgreSQL, and the profiles."""
