// PM2 in cluster mode: two instances of app.cjs sharing one store.
//
//   npx pm2 start examples/pm2/ecosystem.config.cjs
//   npx generation-sync bump settings      # every instance reloads
//   npx pm2 logs gensync-example
//   npx pm2 delete gensync-example
//
// Every instance must use the same store directory: set GENERATION_SYNC_DIR
// (here passed through from the shell that starts PM2).
module.exports = {
  apps: [
    {
      name: 'gensync-example',
      script: `${__dirname}/app.cjs`,
      exec_mode: 'cluster',
      instances: Number(process.env.INSTANCES ?? 2),
      env: {
        GENERATION_SYNC_DIR: process.env.GENERATION_SYNC_DIR,
        STATUS_DIR: process.env.STATUS_DIR,
      },
    },
  ],
};
