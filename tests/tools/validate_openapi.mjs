// validate_openapi.mjs -- validates server/http/openapi.json against the
// OpenAPI 3.0 schema (swagger-parser, offline) and resolves every $ref.
//   node tests/tools/validate_openapi.mjs [file]
import SwaggerParser from '@apidevtools/swagger-parser';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const here = path.dirname(fileURLToPath(import.meta.url));
const file = process.argv[2] || path.join(here, '..', '..', 'server', 'http', 'openapi.json');
try {
  const api = await SwaggerParser.validate(file);
  const ops = Object.values(api.paths).reduce((n, item) => n + Object.keys(item).filter((k) => k !== 'parameters').length, 0);
  console.log(`openapi: ${file} is valid OpenAPI ${api.openapi}: ${Object.keys(api.paths).length} paths, ${ops} operations`);
} catch (err) {
  console.error(`openapi: ${file} is not valid: ${err.message}`);
  process.exit(1);
}
