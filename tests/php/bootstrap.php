<?php
declare(strict_types=1);

if (!extension_loaded('matomo_archive_claim')) {
    fwrite(STDERR, "The matomo_archive_claim extension is not loaded.\n"
        . "Run: php -d extension=target/release/libmatomo_archive_claim.so /usr/bin/phpunit -c tests/php/phpunit.xml\n");
    exit(1);
}

require __DIR__ . '/../support/TestDatabase.php';
require __DIR__ . '/../support/SimulatedServer.php';
require __DIR__ . '/../support/GaleraCluster.php';
require __DIR__ . '/../support/MariaDbServer.php';
require __DIR__ . '/../support/TcpForwarder.php';
require __DIR__ . '/../support/WorkLog.php';
require __DIR__ . '/../support/FpmPool.php';
require __DIR__ . '/../support/RealMatomo.php';
require __DIR__ . '/ExtensionTestCase.php';
require __DIR__ . '/SimulatedServersTestCase.php';
require __DIR__ . '/ClusterTestCase.php';
