"""The API docs: the OpenAPI document at `/schema/openapi.json` and Swagger UI at `/schema/swagger`,
whose scripts and styles come from this process (the `swagger-ui-py` package), not a CDN, so the
page works offline and behind a strict egress policy. (The package is found, not imported: its own
code, a Swagger server for other frameworks, pulls in YAML and more.)"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router

from app import __version__

ASSETS = "/schema-assets"
_SPEC = importlib.util.find_spec("swagger_ui")
if _SPEC is None or not _SPEC.submodule_search_locations:
    raise ImportError("the API docs need the swagger-ui-py package (a dependency: pip install -e .)")
_FOLDER = Path(_SPEC.submodule_search_locations[0]) / "static"
_PREFIX = f"{ASSETS}/{importlib.metadata.version('swagger-ui-py')}"  # a new release, a new URL


def openapi_config() -> OpenAPIConfig:
    swagger = SwaggerRenderPlugin(js_url=f"{_PREFIX}/swagger-ui-bundle.js", css_url=f"{_PREFIX}/swagger-ui.css",
                                  standalone_preset_js_url=f"{_PREFIX}/swagger-ui-standalone-preset.js",
                                  favicon=f'<link rel="icon" type="image/png" href="{_PREFIX}/favicon-32x32.png">')
    return OpenAPIConfig(title="EventFlow", version=__version__, path="/schema", render_plugins=[swagger])


def assets() -> Router:
    return create_static_files_router(path=_PREFIX, directories=[_FOLDER], include_in_schema=False,
                                      cache_control=CacheControlHeader(public=True, max_age=86_400))
