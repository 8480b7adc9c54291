"""`python -m services.resource CONFIG.json --port N`: one priced-service process."""

from services.process import serve_main
from services.resource.app import ResourceConfig, create_app

if __name__ == "__main__":
    serve_main(__doc__, ResourceConfig.load, create_app)
