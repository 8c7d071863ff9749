import sys

from fleetbus.daemon.entry import main
from fleetbus.runtime.settings import HubSettings
from hub.daemon import run

sys.exit(main("hub", HubSettings, run))
