// A loopback TCP proxy in front of a real server, whose connections can be
// made to go silent: what each side sends is read and dropped, so the
// sockets stay open and the kernel keeps acknowledging, as on a network
// path through a proxy or a NAT that died without closing anything. Only
// the connections named go silent; new ones work. A connection can also be
// made slow: what the server sends it trickles through at a set rate, in
// order, as on a congested path or to a client far behind a burst.
'use strict';

const { createConnection, createServer } = require('node:net');

class TcpProxy {
  /** @type {import('node:net').Server} */
  #server;
  /** @type {Set<{ client: import('node:net').Socket, upstream: import('node:net').Socket, sent: string, silent: boolean, backlog: Buffer[], bytesPerTick: number }>} */
  #links = new Set();

  /** @param {import('node:net').Server} server @param {number} port */
  constructor(server, port) {
    this.#server = server;
    /** @readonly */
    this.port = port;
  }

  get url() {
    return `redis://127.0.0.1:${this.port}`;
  }

  /**
   * Listen on a free loopback port, forwarding to `targetPort` on 127.0.0.1.
   * @param {number} targetPort
   * @returns {Promise<TcpProxy>}
   */
  static start(targetPort) {
    return new Promise((resolve, reject) => {
      /** @type {TcpProxy} */
      let proxy;
      const server = createServer((client) => {
        const upstream = createConnection({ host: '127.0.0.1', port: targetPort });
        const link = { client, upstream, sent: '', silent: false, backlog: [], bytesPerTick: Infinity };
        proxy.#links.add(link);
        client.on('data', (chunk) => {
          if (link.silent) return;
          if (link.sent.length < 4096) link.sent += chunk.toString('latin1');
          upstream.write(chunk);
        });
        upstream.on('data', (chunk) => {
          if (link.silent) return;
          if (link.bytesPerTick === Infinity && link.backlog.length === 0) client.write(chunk);
          else link.backlog.push(chunk);
        });
        // A slow link passes on at most bytesPerTick every 10 ms (and what waits once it is fast again).
        const trickle = setInterval(() => {
          let room = link.bytesPerTick;
          while (link.backlog.length > 0 && room > 0 && !link.silent) {
            const chunk = /** @type {Buffer} */ (link.backlog[0]);
            const part = chunk.subarray(0, Math.min(chunk.length, room));
            client.write(part);
            room -= part.length;
            if (part.length === chunk.length) link.backlog.shift();
            else link.backlog[0] = chunk.subarray(part.length);
          }
        }, 10);
        const end = () => {
          clearInterval(trickle);
          proxy.#links.delete(link);
          client.destroy();
          upstream.destroy();
        };
        client.on('close', end);
        upstream.on('close', end);
        client.on('error', end);
        upstream.on('error', end);
      });
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        const address = server.address();
        proxy = new TcpProxy(server, typeof address === 'object' && address !== null ? address.port : 0);
        resolve(proxy);
      });
    });
  }

  /**
   * Make every open connection whose client has sent `marker` (a command name, say SUBSCRIBE) go silent, both ways.
   * @param {string} marker
   * @returns {number} how many went silent
   */
  silence(marker) {
    let count = 0;
    for (const link of this.#links) {
      if (!link.silent && link.sent.toUpperCase().includes(marker.toUpperCase())) {
        link.silent = true;
        count++;
      }
    }
    return count;
  }

  /**
   * Make what the server sends to every open connection whose client has sent `marker` pass at `bytesPerSecond`
   * at most (Infinity: at full speed again).
   * @param {string} marker
   * @param {number} bytesPerSecond
   * @returns {number} how many were slowed
   */
  throttle(marker, bytesPerSecond) {
    let count = 0;
    for (const link of this.#links) {
      if (link.sent.toUpperCase().includes(marker.toUpperCase())) {
        link.bytesPerTick = bytesPerSecond === Infinity ? Infinity : Math.max(1, Math.round(bytesPerSecond / 100));
        count++;
      }
    }
    return count;
  }

  /** Open connections whose client has sent `marker`, silent or not. @param {string} marker */
  connections(marker) {
    return [...this.#links].filter((link) => link.sent.toUpperCase().includes(marker.toUpperCase())).map((link) => ({ silent: link.silent }));
  }

  close() {
    for (const link of this.#links) {
      link.client.destroy();
      link.upstream.destroy();
    }
    return new Promise((resolve) => this.#server.close(() => resolve(undefined)));
  }
}

module.exports = { TcpProxy };
