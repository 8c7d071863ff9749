import sys

from edge.daemon import run
from fleetbus.daemon.entry import main
from fleetbus.runtime.settings import EdgeSettings

sys.exit(main("edge", EdgeSettings, run))
