import sys

from fleetbus.entry import main
from fleetbus.settings import HubSettings
from hub.daemon import run

sys.exit(main("hub", HubSettings, run))
