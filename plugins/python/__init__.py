"""The Python algorithm plugin: user algorithms in supervised child processes.

`plugin` is the IOC side, `lane` hands frames to one child and reads its replies, `supervisor`
starts, restarts and stops that child, `watch` reloads on a changed file. What runs in the child
(the user API, the control protocol, the runtime) is the self-contained package
`ndflow.algorithm`.
"""
