// A priced service written as a seller would write it with the official x402 TypeScript SDK.
//
//   node tests/outside/ts_service/server.mjs --world world.json --port 8001 \
//       [--facilitator-url URL] [--path /weather] [--price 1000]
//
// Why it exists: the same seller as tests/outside/sdk_service.py, but on the TypeScript SDK
// (@x402/express over an x402ResourceServer with @x402/evm's exact server scheme and @x402/core's
// HTTPFacilitatorClient), so a world can be paid through either SDK's server code and the two compared.
// Plain ESM, no build step: it runs from the packages pinned in package.json, installed with
// --ignore-scripts.
//
// Configured from a world file (`x402bench up --json`): the price is an explicit AssetAmount
// {amount, asset, extra: {name, version}} in the world's token (a money string such as "$0.001" has
// no default asset on chain 31337), paid to payees[0] on the world's network with the "exact" scheme;
// the facilitator is the world's unless --facilitator-url names another. GET /health is free.
// Listens on 127.0.0.1 only.

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { HTTPFacilitatorClient } from "@x402/core/server";
import { ExactEvmScheme } from "@x402/evm/exact/server";
import { paymentMiddleware, x402ResourceServer } from "@x402/express";
import express from "express";

const USAGE =
  "usage: node tests/outside/ts_service/server.mjs --world WORLD.json --port N " +
  "[--facilitator-url URL] [--path /weather] [--price 1000]";

/** Command-line options, checked; exits with status 2 and the usage line when they are wrong. */
function options(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        world: { type: "string" },
        port: { type: "string" },
        "facilitator-url": { type: "string" },
        path: { type: "string", default: "/weather" },
        price: { type: "string", default: "1000" },
      },
    }));
  } catch (error) {
    fail(error.message);
  }
  if (!values.world) fail("--world is required");
  const port = Number(values.port);
  if (!Number.isInteger(port) || port <= 0 || port > 65535) fail("--port must be a TCP port number");
  if (!/^[1-9][0-9]*$/.test(values.price)) fail("--price must be a positive number of atomic units");
  if (!values.path.startsWith("/")) fail("--path must start with /");
  return { world: values.world, port, facilitatorUrl: values["facilitator-url"], path: values.path, price: values.price };
}

function fail(message) {
  console.error(`${USAGE}\nerror: ${message}`);
  process.exit(2);
}

/** An explicit AssetAmount in the world's token, with the EIP-712 domain the payer signs against. */
function priceOf(world, atomic) {
  const { address, name, version } = world.token;
  return { amount: atomic, asset: address, extra: { name, version } };
}

function main() {
  const opts = options(process.argv.slice(2));
  const world = JSON.parse(readFileSync(opts.world, "utf8"));
  const facilitatorUrl = opts.facilitatorUrl || world.facilitator_url;
  if (!facilitatorUrl) fail("the world file has no facilitator_url; pass --facilitator-url");

  const routes = {
    [`GET ${opts.path}`]: {
      accepts: {
        scheme: "exact",
        payTo: world.payees[0],
        price: priceOf(world, opts.price),
        network: world.network,
      },
      description: `${opts.path} (x402 TypeScript SDK example)`,
      mimeType: "application/json",
    },
  };
  const server = new x402ResourceServer(new HTTPFacilitatorClient({ url: facilitatorUrl })).register(
    world.network,
    new ExactEvmScheme(),
  );

  const app = express();
  app.get("/health", (_req, res) => res.json({ status: "ok" }));
  app.use(paymentMiddleware(routes, server));
  app.get(opts.path, (_req, res) => res.json({ route: opts.path, forecast: "sunny", temperature_c: 21 }));

  const listener = app.listen(opts.port, "127.0.0.1", () => {
    console.log(`x402 TypeScript SDK service on http://127.0.0.1:${opts.port}${opts.path}`);
  });
  listener.on("error", (error) => {
    console.error(error.message);
    process.exit(1);
  });
  for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => {
      listener.close(() => process.exit(0));
      listener.closeAllConnections();
    });
  }
}

main();
