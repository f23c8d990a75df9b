"""HTTP ingress (:8080) and admin API (:9070)."""

from .admin import admin_app
from .app import ingress_app
from .errors import IngressError
from .runtime import IngressRuntime, IngressSettings, run_ingress

__all__ = ["IngressError", "IngressRuntime", "IngressSettings", "admin_app", "ingress_app", "run_ingress"]
