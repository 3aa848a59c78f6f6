"""The Python algorithm plugin: user algorithms in supervised child processes.

`plugin` is the IOC side, `lane` supervises one child, `child` is the script the child runs.
`wire` is shared by both sides and, like `ndflow.algorithm` and `ndflow.shm`, imports only the
standard library and numpy. This __init__ must stay import-free: the child imports `wire`
through it.
"""
