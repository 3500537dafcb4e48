// Starts Swagger UI on /docs. A file of its own, not an inline script, so the page works
// under the dashboard's Content-Security-Policy.
"use strict";

window.addEventListener("load", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    layout: "BaseLayout",
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
    // The default asks validator.swagger.io for a badge: a request to another site.
    validatorUrl: null,
  });
});
