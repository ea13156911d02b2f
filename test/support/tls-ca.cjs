// A private certificate authority and a server certificate for 127.0.0.1,
// made with the openssl command (installed by npm test / .ci/run), for tests
// of TLS connections to a real redis-server.
const { execFileSync } = require('node:child_process');
const { join } = require('node:path');

/**
 * Write ca.pem, server.pem and server.key into `dir`.
 * @param {string} dir
 * @returns {{ ca: string, cert: string, key: string }}
 */
function makeTlsFiles(dir) {
  const file = (name) => join(dir, name);
  const openssl = (...args) => execFileSync('openssl', args, { stdio: 'pipe' });
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=generation-sync test CA', '-keyout', file('ca.key'), '-out', file('ca.pem'));
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', file('server.key'), '-out', file('server.csr'));
  require('node:fs').writeFileSync(file('san.ext'), 'subjectAltName=IP:127.0.0.1\n');
  openssl('x509', '-req', '-in', file('server.csr'), '-CA', file('ca.pem'), '-CAkey', file('ca.key'), '-CAcreateserial', '-days', '2', '-extfile', file('san.ext'), '-out', file('server.pem'));
  return { ca: file('ca.pem'), cert: file('server.pem'), key: file('server.key') };
}

module.exports = { makeTlsFiles };
