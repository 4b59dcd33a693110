// Sends StatsD with the real npm client hot-shots, over UDP, TCP and (given a socket path) a
// Unix datagram socket.
// Usage: node send_hotshots.js PORT NODE_PATH_TO_HOT_SHOTS [SOCKET_PATH]
const StatsD = require(process.argv[3]);
const port = Number(process.argv[2]);
const socketPath = process.argv[4];

function send(protocol, prefix) {
  return new Promise((resolve, reject) => {
    const where = protocol === 'uds' ? { path: socketPath } : { host: '127.0.0.1', port };
    const c = new StatsD({ ...where, protocol, prefix, errorHandler: reject });
    c.increment('hits', 4, ['env:prod']);
    c.gauge('temp', 12.5);
    c.timing('lat', 42);
    c.histogram('hist', 8);
    c.distribution('dist', 9);
    c.set('users', 'zed');
    c.close((err) => (err ? reject(err) : resolve()));
  });
}

send('udp', 'js.udp.')
  .then(() => send('tcp', 'js.tcp.'))
  .then(() => (socketPath ? send('uds', 'js.uds.') : null))
  .then(() => console.log('sent'))
  .catch((e) => { console.error(e); process.exit(1); });
