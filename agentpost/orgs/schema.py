from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """Describe API key authentication in the OpenAPI schema as bearer auth."""

    target_class = "agentpost.orgs.auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An org's API key: `Authorization: Bearer ap_...`.",
        }
