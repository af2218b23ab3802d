"""The API's route handlers, one Controller per area; app.py mounts CONTROLLERS."""

from .health import HealthController
from .neuronpedia import NeuronpediaController
from .pairs import PairsController
from .saes import SaesController
from .search import SearchController
from .sql import SqlController
from .widths import WidthsController

CONTROLLERS = [HealthController, SaesController, PairsController, SearchController, SqlController,
               NeuronpediaController, WidthsController]
