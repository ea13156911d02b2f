// PM2 on several hosts with one Redis: the same file on every host.
//
//   GENERATION_SYNC_DIR=/var/lib/myapp/generation-sync REDIS_URL=redis://redis.internal:6379 \
//     npx pm2 start examples/pm2-relay/ecosystem.config.cjs
//
// On each host, the instances share the host's store file and elect one relay
// among themselves; the relays of all hosts meet in Redis.
module.exports = {
  apps: [
    {
      name: 'gensync-relay-example',
      script: `${__dirname}/app.cjs`,
      exec_mode: 'cluster',
      instances: Number(process.env.INSTANCES ?? 2),
      env: {
        GENERATION_SYNC_DIR: process.env.GENERATION_SYNC_DIR,
        REDIS_URL: process.env.REDIS_URL,
        REDIS_NAMESPACE: process.env.REDIS_NAMESPACE,
        HOST_NAME: process.env.HOST_NAME,
        STATUS_DIR: process.env.STATUS_DIR,
      },
    },
  ],
};
