"""Records the order in which frames arrive and which worker upstream made them."""

from ndflow.algorithm import Algorithm, Output


class Recorder(Algorithm):
    ids = Output(int, length=256, doc="unique ids in arrival order (last 256)")
    received = Output(int)
    workers = Output(int, doc="distinct WorkerPid attributes seen")

    def start(self):
        self.seen = []
        self.pids = set()

    def process(self, image, params, attributes, metadata):
        self.seen = (self.seen + [metadata.unique_id])[-256:]
        if "WorkerPid" in attributes:
            self.pids.add(attributes["WorkerPid"])
        return {"ids": self.seen, "received": len(self.seen), "workers": len(self.pids)}
