// Cisco's own xAPI client (jsxapi, ssh:// transport: a shell with no pty, JSON output mode)
// against `roomkey sim`. Driven by tests/jsxapi_interop.rs, which starts the simulated
// device and passes its address in the environment. Prints one JSON line of results;
// exits non-zero on any failure (the Rust test bounds the run with a timeout).
'use strict';

const jsxapi = require('jsxapi');

const { ROOMKEY_JSXAPI_HOST: host, ROOMKEY_JSXAPI_PORT: port } = process.env;
const { ROOMKEY_JSXAPI_USER: username, ROOMKEY_JSXAPI_PASSWORD: password } = process.env;

function fail(what, err) {
  console.error(`jsxapi interop: ${what}:`, err && (err.stack || err.message || err));
  process.exit(2);
}

const xapi = jsxapi.connect(`ssh://${host}:${port}`, { username, password });
xapi.on('error', (err) => fail('connection error', err));

xapi.on('ready', async () => {
  const out = {};
  try {
    // A status read (catalogue reply.status, reply.json).
    out.productId = await xapi.Status.SystemUnit.ProductId.get();
    out.uptime = await xapi.Status.SystemUnit.Uptime.get();
    // An xCommand (catalogue reply.command).
    const show = await xapi.Command.Security.Certificates.Services.Show();
    out.showStatus = show.status;
    // A failing xCommand: the XPath error form (catalogue reply.json-error).
    try {
      await xapi.Command.Dila();
      out.unknownCommand = 'accepted';
    } catch (err) {
      out.unknownCommand = err.message;
    }
    // A feedback registration (catalogue feedback.commands), then a configuration set
    // (catalogue reply.config-set) that the registration reports.
    let off;
    const seen = new Promise((resolve) => {
      off = xapi.Config.Conference.EndToEndEncryption.Mode.on((value) => resolve(value));
    });
    await off.registration;
    out.registered = true;
    await xapi.Config.Conference.EndToEndEncryption.Mode.set('Off');
    out.feedback = await seen;
    out.modeAfterSet = await xapi.Config.Conference.EndToEndEncryption.Mode.get();
    off();
    await xapi.Config.Conference.EndToEndEncryption.Mode.set('On');
    // A status read of a node that does not exist (catalogue reply.json-error).
    try {
      await xapi.Status.No.Such.Node.get();
      out.badPath = 'accepted';
    } catch (err) {
      out.badPath = err.message;
    }
  } catch (err) {
    fail('request failed', err);
  }
  console.log(JSON.stringify(out));
  xapi.close();
  process.exit(0);
});
